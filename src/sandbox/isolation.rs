//! What keeps a function from the host beyond its namespaces: a user namespace per instance
//! with a uid/gid range of its own, and a seccomp filter.
//!
//! Every instance gets [`IDS_PER_INSTANCE`] ids starting at a base that no other live instance
//! uses: uid/gid 0 inside is an unprivileged, unmapped-elsewhere id on the host, so host files
//! keep their owners' protection, kernel per-user limits (`RLIMIT_NPROC`, inotify, …) are not
//! shared between instances, and capabilities reach only what the instance's namespace owns.
//! The default base (0x70000000) lies above the range systemd hands to containers
//! (0x80000–0x6FFFFFFF) and below 2^31.
//!
//! The seccomp filter follows Docker's default profile in spirit, as a deny list (everything
//! else is allowed, so no language runtime breaks on a syscall the list forgot): no mounts
//! or new mount API, no namespaces of their own (`unshare`/`clone` with `CLONE_NEWUSER`,
//! `setns`), no `AF_VSOCK` sockets (not namespaced), no `clone3` (`ENOSYS`, so libc falls
//! back to `clone`, whose flags the filter can read), no `bpf`, `perf_event_open`, `io_uring`, `userfaultfd`, kexec, module loading, keyrings,
//! clock or swap changes, `open_by_handle_at`, `syslog`, `acct`, `quotactl`, `iopl`/`ioperm`;
//! syscalls of other architectures (i386 through int 0x80, x32 numbers) kill the process. The
//! filter is compiled once per supervisor with libseccomp (as youki and runc do), as a binary
//! tree: its attach at every start costs the kernel one short walk per syscall number.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

/// Ids each instance owns (uid and gid alike): 0 … 65535 inside, like a full Linux system.
pub const IDS_PER_INSTANCE: u32 = 65536;

/// Default first host id of the instances' ranges.
pub const DEFAULT_ID_BASE: u32 = 0x7000_0000;

/// The highest host id fcsup hands out (exclusive): systemd's "foreign" range starts there.
const ID_CEILING: u32 = 0x7FFE_0000;

/// How instances are isolated; fixed for a supervisor's life.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    /// Id ranges for a user namespace per instance; `None` runs functions as host root
    /// (`--insecure-instances`).
    pub ids: Option<Arc<IdRanges>>,
    /// The seccomp filter; `None` runs functions without one (`--insecure-instances`).
    pub seccomp: Option<Arc<Filters>>,
    /// The small program an instance's init re-executes to leave the supervisor's memory
    /// (`fcsup-init` next to this executable, opened once); without it the init re-executes
    /// fcsup itself (`fcsup instance-init`), which costs more at every start.
    pub init_program: Option<Arc<OwnedFd>>,
}

impl Isolation {
    /// Full isolation with id ranges from `base`.
    pub fn full(base: u32) -> io::Result<Isolation> {
        let init_program = init_program();
        Ok(Isolation { ids: Some(Arc::new(IdRanges::new(base)?)), seccomp: Some(Arc::new(Filters::build()?)), init_program })
    }

    /// No user namespace and no seccomp filter.
    pub fn none() -> Isolation {
        Isolation { init_program: init_program(), ..Isolation::default() }
    }
}

/// `fcsup-init` next to the running executable, as a sealed private copy (a memfd) of mode
/// 0711: a program the instance cannot read is not dumpable from its first instruction, so the
/// function cannot ptrace its init in the moment between the init's execve and the init's own
/// `PR_SET_DUMPABLE` (an installed copy of mode 0755 would leave that window open).
fn init_program() -> Option<Arc<OwnedFd>> {
    let path = std::env::current_exe().ok()?.with_file_name("fcsup-init");
    match private_copy(&path) {
        Ok(fd) => Some(Arc::new(fd)),
        Err(e) => {
            tracing::warn!("cannot use {} ({e}): each instance's init re-executes fcsup itself instead (slower starts)", path.display());
            None
        }
    }
}

fn private_copy(path: &std::path::Path) -> io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag};
    use nix::sys::memfd::MFdFlags;
    let bytes = std::fs::read(path)?;
    /// linux/memfd.h; nix does not name it yet.
    const MFD_EXEC: libc::c_uint = 0x10;
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    // MFD_EXEC is refused by kernels before 6.3, which make every memfd executable anyway.
    let fd = nix::sys::memfd::memfd_create(c"fcsup-init", flags | MFdFlags::from_bits_retain(MFD_EXEC))
        .or_else(|_| nix::sys::memfd::memfd_create(c"fcsup-init", flags))?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, &bytes)?;
    nix::sys::stat::fchmod(&file, nix::sys::stat::Mode::from_bits_retain(0o711))?;
    let seals = SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
    nix::fcntl::fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(OwnedFd::from(file))
}

/// The free id ranges, handed out oldest-freed first so a range is reused as late as possible.
#[derive(Debug)]
pub struct IdRanges {
    base: u32,
    free: Mutex<VecDeque<u32>>,
    /// User namespaces with the mapping of the next slots to be handed out, made ahead
    /// (idmapped image layers; making one costs a fork), each used once.
    userns: Mutex<std::collections::HashMap<u32, OwnedFd>>,
    /// Wakes the thread that makes them.
    refill: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl IdRanges {
    /// Ranges of [`IDS_PER_INSTANCE`] ids from `base` up to the ceiling.
    pub fn new(base: u32) -> io::Result<IdRanges> {
        let slots = ID_CEILING.saturating_sub(base) / IDS_PER_INSTANCE;
        if base == 0 || slots == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no room for instance id ranges from {base} below {ID_CEILING}")));
        }
        Ok(IdRanges { base, free: Mutex::new((0..slots).collect()), userns: Mutex::default(), refill: Mutex::default() })
    }

    /// A range of its own for one instance, returned when the value is dropped.
    pub fn take(self: &Arc<Self>) -> io::Result<IdRange> {
        let slot = self.free.lock().expect("id ranges").pop_front().ok_or_else(|| io::Error::other("every instance id range is in use"))?;
        Ok(IdRange { first: self.base + slot * IDS_PER_INSTANCE, slot, owner: self.clone() })
    }
}

/// One instance's host ids: `first` … `first + IDS_PER_INSTANCE - 1`.
#[derive(Debug)]
pub struct IdRange {
    /// The host id that is 0 inside.
    pub first: u32,
    slot: u32,
    owner: Arc<IdRanges>,
}

impl IdRange {
    /// Writes `pid`'s uid and gid maps (0 inside is `first` outside).
    pub fn write_maps(&self, pid: i32) -> io::Result<()> {
        write_maps(pid, self.first)
    }
}

impl IdRange {
    /// A user namespace with this range's mapping (0 inside is `first`), for idmapped mounts
    /// that show files owned by 0 … 65535 as the instance's own: made ahead (see
    /// [`IdRange::prepare_next`]), else made now (a fork).
    pub fn userns(&self) -> io::Result<OwnedFd> {
        let ready = self.owner.userns.lock().expect("userns cache").remove(&self.slot);
        match ready {
            Some(fd) => Ok(fd),
            None => make_userns(self.first),
        }
    }

    /// Has the user namespaces of the next ranges to be handed out made ahead, in the
    /// background. Called once an instance that needed one has started: a fork of the
    /// supervisor during a start would hold up that start (the init shares its memory).
    pub fn prepare_next(&self) {
        self.owner.prepare_userns();
    }
}

/// How many of the next id ranges to be handed out get their user namespace made ahead.
const USERNS_AHEAD: usize = 4;

impl IdRanges {
    /// Has a thread of its own make the user namespaces of the next [`USERNS_AHEAD`] free
    /// ranges (started on first need: only instances of images use them), off the cold start.
    fn prepare_userns(self: &Arc<Self>) {
        let mut refill = self.refill.lock().expect("userns refill");
        if refill.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let me = Arc::downgrade(self);
            let spawned = std::thread::Builder::new().name("fcsup-userns".into()).spawn(move || {
                // Not real-time: this is background work.
                let _ = super::sys::sched_setscheduler(libc::SCHED_OTHER, 0);
                while rx.recv().is_ok() {
                    let Some(ranges) = me.upgrade() else { return };
                    let next: Vec<u32> = ranges.free.lock().expect("id ranges").iter().take(USERNS_AHEAD).copied().collect();
                    for slot in next {
                        if ranges.userns.lock().expect("userns cache").contains_key(&slot) {
                            continue;
                        }
                        match make_userns(ranges.base + slot * IDS_PER_INSTANCE) {
                            Ok(fd) => {
                                let mut cache = ranges.userns.lock().expect("userns cache");
                                if cache.len() < 2 * USERNS_AHEAD {
                                    cache.insert(slot, fd);
                                }
                            }
                            Err(e) => tracing::warn!("cannot make a user namespace ahead: {e}"),
                        }
                    }
                }
            });
            match spawned {
                Ok(_) => *refill = Some(tx),
                Err(e) => {
                    tracing::warn!("cannot start the user namespace thread: {e}");
                    return;
                }
            }
        }
        if let Some(tx) = &*refill {
            let _ = tx.send(());
        }
    }
}

fn write_maps(pid: i32, first: u32) -> io::Result<()> {
    let line = format!("0 {first} {IDS_PER_INSTANCE}\n");
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{map}"), &line).map_err(|e| io::Error::new(e.kind(), format!("write {map} of {pid}: {e}")))?;
    }
    Ok(())
}

/// Forks a child that enters a new user namespace and waits; maps it (0 inside is `first`),
/// keeps a handle on the namespace, lets the child exit.
fn make_userns(first: u32) -> io::Result<OwnedFd> {
    // One helper at a time: a helper forked while another's pipes are open would hold their
    // ends, and each would wait forever for the other's go-ahead to close.
    static FORKING: Mutex<()> = Mutex::new(());
    let _one = FORKING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child makes raw syscalls only (no allocation, no lock) and exits.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            // Its copy of the go-ahead's write end would keep the read below from ever
            // seeing the parent's close.
            drop((ready_r, go_w));
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&ready_w, if ok { b"1" } else { b"0" });
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(&go_r, &mut b);
            super::sys::exit_now(0)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((ready_w, go_r));
            let mut b = [0u8; 1];
            let ready = nix::unistd::read(&ready_r, &mut b);
            let pid = child.as_raw();
            let result = match ready {
                Ok(1) if b[0] == b'1' => write_maps(pid, first).and_then(|()| std::fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from)),
                _ => Err(io::Error::other("the helper could not enter a new user namespace")),
            };
            drop(go_w);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

impl Drop for IdRange {
    fn drop(&mut self) {
        self.owner.free.lock().expect("id ranges").push_back(self.slot);
    }
}

/// The compiled seccomp program.
#[derive(Debug)]
pub struct Filters {
    program: Vec<libc::sock_filter>,
}

/// Syscalls refused with `EPERM` whatever their arguments.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_syslog,
    libc::SYS_open_by_handle_at,
];

/// Old or x86-only syscalls refused the same way (absent from newer architectures' tables).
#[cfg(target_arch = "x86_64")]
const DENIED_X86: &[i64] =
    &[libc::SYS_nfsservctl, libc::SYS_uselib, libc::SYS__sysctl, libc::SYS_sysfs, libc::SYS_ustat, libc::SYS_iopl, libc::SYS_ioperm];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_X86: &[i64] = &[];

impl Filters {
    /// Compiles the filter for this architecture with libseccomp, shaped as a binary tree:
    /// the kernel runs a new filter once per syscall number when it is attached (to cache
    /// what it always allows), so a short walk per number makes every instance's start cheaper.
    pub fn build() -> io::Result<Filters> {
        use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
        let err = |e: libseccomp::error::SeccompError| io::Error::other(format!("seccomp filter: {e}"));
        let nr = |n: i64| ScmpSyscall::from(i32::try_from(n).expect("syscall numbers are small"));
        let eperm = ScmpAction::Errno(libc::EPERM);
        let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(err)?;
        // Syscalls of another architecture (the i386 ABI through int 0x80) kill the process.
        ctx.set_act_badarch(ScmpAction::KillProcess).map_err(err)?;
        ctx.set_ctl_optimize(2).map_err(err)?;
        // no_new_privs is set by the caller, in the order it chooses.
        ctx.set_ctl_nnp(false).map_err(err)?;
        for n in DENIED.iter().chain(DENIED_X86) {
            ctx.add_rule(eperm, nr(*n)).map_err(err)?;
        }
        let newuser = libc::CLONE_NEWUSER as u64;
        for n in [libc::SYS_unshare, libc::SYS_clone] {
            ctx.add_rule_conditional(eperm, nr(n), &[ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(newuser), newuser)]).map_err(err)?;
        }
        // vsock addresses are not namespaced: a function could hold the host's ports or talk
        // to the hypervisor (Docker's profile refuses AF_VSOCK too). The kernel reads the
        // domain as an int, so only the low 32 bits are compared (a domain of
        // 0x1_0000_0028 is AF_VSOCK to the kernel).
        ctx.add_rule_conditional(
            eperm,
            nr(libc::SYS_socket),
            &[ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(0xffff_ffff), libc::AF_VSOCK as u64)],
        )
        .map_err(err)?;
        // clone3's flags live in memory the filter cannot read: ENOSYS, and libc falls back to
        // clone, whose flags it can.
        ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), nr(libc::SYS_clone3)).map_err(err)?;
        let (r, w) = super::pipe_cloexec()?;
        ctx.export_bpf(&w).map_err(err)?;
        drop(w);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut bytes)?;
        let size = std::mem::size_of::<libc::sock_filter>();
        let program = bytes
            .chunks_exact(size)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Filters { program })
    }

    /// The program.
    pub fn program(&self) -> &[libc::sock_filter] {
        &self.program
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_distinct_and_reused_last() {
        let ids = Arc::new(IdRanges::new(DEFAULT_ID_BASE).unwrap());
        let a = ids.take().unwrap();
        let b = ids.take().unwrap();
        assert_eq!(a.first, DEFAULT_ID_BASE);
        assert_eq!(b.first, DEFAULT_ID_BASE + IDS_PER_INSTANCE);
        let first = a.first;
        drop(a);
        let c = ids.take().unwrap();
        assert_ne!(c.first, first, "a freed range goes to the back of the queue");
        assert!(c.first + IDS_PER_INSTANCE <= ID_CEILING);
    }

    #[test]
    fn no_room_is_an_error() {
        IdRanges::new(ID_CEILING).unwrap_err();
        IdRanges::new(0).unwrap_err();
    }

    #[test]
    fn filter_compiles() {
        let f = Filters::build().unwrap();
        assert!(f.program().len() > 10 && f.program().len() < 4096);
    }
}
